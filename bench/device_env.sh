# Sourced by the *_on_device.sh scripts: the lent GPU machine lacks diffusers and its helpers, so the wheels
# carried in .whl/ go to /tmp/site, which (with the repository) comes first on PYTHONPATH. Put them there with
# `pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata lazy_importer spandrel==0.4.2 einops`, and for
# the API server and the annotators: `pip download --no-deps -d .whl uvicorn python-multipart controlnet_aux==0.0.10`
# (spandrel and einops: the upscaler benchmarks).
# Installed once per machine (a marker file), so scripts started side by side do not install over each other.
if [ ! -f /tmp/site/.sdstudio-wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    touch /tmp/site/.sdstudio-wheels
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
