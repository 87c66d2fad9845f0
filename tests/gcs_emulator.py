"""A real GCS JSON-API server on localhost (the `gcp-storage-emulator` package, in its own
process) and the environment that points every client at it:

- gcsfs and google-cloud-storage (epath's gs:// backend; tensorboardX's gs:// writer):
  STORAGE_EMULATOR_HOST;
- TensorStore's gcs driver (Orbax's array writes): TENSORSTORE_GCS_HTTP_URL, with
  GOOGLE_AUTH_TOKEN_FOR_TESTING so it sends a fixed token instead of looking for credentials;
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs would otherwise ask the Storage Control API,
  which the emulator lacks, for each bucket's layout (and warn every time it fails).
- EPATH_USE_TF=false (muse_jax's default too, set by its package `__init__`): etils.epath sends
  gs:// to gcsfs, not to TensorFlow's GCS client, which has no endpoint setting.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time

BUCKET = "muse-test"
# The emulator leaves out the x-goog-generation header of an object download, which GCS sends
# and TensorStore reads ("Malformed StorageGeneration" when OCDBT reads back a manifest it has
# written); the wrapper adds it (and x-goog-metageneration) from the object's own record.
_SERVE = f"""
import sys
from gcp_storage_emulator.handlers import objects
_download = objects.download

def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
  except Exception:  # not found: the handler answers 404
    pass
  return _download(request, response, storage, *args, **kwargs)

objects.download = download
# The server answers one request at a time, and socketserver listens with a backlog of 5,
# which the parallel connections of TensorStore and gcsfs overflow (the kernel's
# ListenOverflows counter rises through a run of test_gcs_run.py; with this backlog it stays
# put). A dropped handshake is retried only after a second or more, and on a loaded machine a
# client could fail a read meanwhile.
from http import server as http_server
http_server.HTTPServer.request_queue_size = 1024
from gcp_storage_emulator.server import create_server
server = create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket="{BUCKET}")
server.start()
sys.stdin.read()
server.stop()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false"}
    # It serves until its stdin closes, i.e. until this process has exited: tensorboardX's
    # gs:// writer uploads its event file once more when collected at interpreter exit, after
    # every fixture has been torn down, and retries for minutes if the server is gone.
    self.proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(self.port)], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        break
      except OSError:
        if self.proc.poll() is not None or time.time() > deadline:
          raise RuntimeError("gcp-storage-emulator did not start")
        time.sleep(0.1)

