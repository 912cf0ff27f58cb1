"""How weight files name things: one module per naming scheme, used for reading AND writing."""
