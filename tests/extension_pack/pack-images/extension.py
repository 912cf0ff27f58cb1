"""After-image hooks of the test pack: replace the image, or run an inpaint pass (a toy "detailer")."""

from PIL import Image, ImageDraw

from webui.extensions import api

MAGENTA = (255, 0, 255)


def center_mask(size: tuple[int, int]) -> Image.Image:
    """White over the middle quarter of the image: what the detailer redraws."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, 3 * width // 4 - 1, 3 * height // 4 - 1), fill=255)
    return mask


def setup(ext: api.ExtensionSetup) -> None:
    before_detail = ext.data_folder / "before-detail.png"  # the first pass's image, for the tests to compare

    def after_image(context: api.ImageReady):
        if "PACKREPLACE" in context.prompt:
            context.set_parameter("Pack replaced", "magenta")
            return Image.new("RGB", context.image.size, MAGENTA)
        if "PACKDETAIL" in context.prompt:
            context.image.save(before_detail)
            detailed = context.inpaint(context.image, center_mask(context.image.size), prompt="a green background",
                                       denoising_strength=1.0, mask_blur=0)
            context.set_parameter("Pack detailer", "center")
            return detailed
        return None

    ext.on_after_image(after_image)
