"""schemathesis hooks for scripts/fuzz-http.sh: the deploy route takes a
module's raw bytes (application/wasm), which schemathesis cannot send
without a serializer. Generated values go as bytes, so the node sees
random (invalid) modules and must refuse each with a 4xx."""
import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()
