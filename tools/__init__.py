"""Project tools that are not part of the product (the app never imports them)."""
