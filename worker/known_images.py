"""What a Docker environment cache learnt of its engine's images, kept only
while the engine's image events are heard.

A warm run's environment needs the base image's id and to know that the
environment's tag exists; asking the engine for both on every run cost two
engine calls. `KnownImages` remembers them and forgets as the events tell of a
change (a base rebuilt under its name, a tag removed), so a rebuilt or removed
base or environment is asked for again; while the event stream is broken
nothing is remembered. The last-use stamp of an environment (its re-tag,
which pruning reads) is renewed at most every STAMP_SECONDS.
"""

from __future__ import annotations

import threading
import time

from docker import DockerClient
from docker.errors import DockerException
from requests.exceptions import RequestException

# A cached environment's last use (LastTagTime, which pruning reads in days) is
# stamped at most this often: the re-tag was an engine call on every warm run.
STAMP_SECONDS = 60.0
EVENTS_RETRY_SECONDS = 1.0  # before the image events are asked for again after the stream broke


class KnownImages:
    """What an ImageCache learnt of its engine's images (base images' ids, which
    environment tags exist and when they were last stamped), trusted only while
    a thread of its own hears the engine's image events. A `tag` of one of the
    cache's own environment tags (`own_prefix`: its stamps, its builds) changes
    nothing known; any other `tag` forgets the base images' ids (a base may
    have been rebuilt under its name); any other event (an untag, a removal, a
    pull, a load) forgets everything, and so does a broken stream until it is
    heard again. A look-up remembers what it found only if nothing that would
    have forgotten it was heard between its start (`generation()`) and its end."""

    def __init__(self, client: DockerClient, own_prefix: str):
        self._client = client
        self._own_prefix = own_prefix
        self._lock = threading.Lock()
        self._base_ids: dict[str, str] = {}
        self._stamped: dict[str, float] = {}  # environment tag -> time.monotonic() of its last stamp
        self._retags = 0  # events that forgot the base ids
        self._removals = 0  # events that forgot everything
        self._live = False
        self._closed = False
        self._stream = None
        self._thread: threading.Thread | None = None

    def generation(self) -> tuple[int, int] | None:
        """The counts of changes heard so far, None while the events are not
        heard (nothing is remembered then); starts the listener on first use."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._listen, name="image-events", daemon=True)
                self._thread.start()
            return (self._retags, self._removals) if self._live else None

    def base_id(self, name: str) -> str | None:
        with self._lock:
            return self._base_ids.get(name) if self._live else None

    def stamped(self, tag: str) -> bool:
        """Whether `tag` is known to exist and was stamped within STAMP_SECONDS."""
        with self._lock:
            at = self._stamped.get(tag) if self._live else None
            return at is not None and time.monotonic() - at < STAMP_SECONDS

    def remember_base(self, name: str, image_id: str, generation: tuple[int, int] | None) -> None:
        with self._lock:
            if self._live and generation == (self._retags, self._removals):
                self._base_ids[name] = image_id

    def remember_stamp(self, tag: str, generation: tuple[int, int] | None) -> None:
        with self._lock:
            if self._live and generation is not None and generation[1] == self._removals:
                self._stamped[tag] = time.monotonic()

    def forget(self) -> None:
        with self._lock:
            self._forget()

    def close(self) -> None:
        """Stop listening (the thread ends as its stream is closed)."""
        with self._lock:
            self._closed, self._live, stream = True, False, self._stream
            self._forget()
        if stream is not None:
            stream.close()

    @property
    def live(self) -> bool:
        with self._lock:
            return self._live

    def _forget(self) -> None:  # under the lock
        self._retags += 1
        self._removals += 1
        self._base_ids.clear()
        self._stamped.clear()

    def _heard(self, event: dict) -> None:  # under the lock
        if event.get("Action") != "tag":
            self._forget()
        elif not ((event.get("Actor") or {}).get("Attributes") or {}).get("name", "").startswith(self._own_prefix):
            self._retags += 1
            self._base_ids.clear()

    def _listen(self) -> None:
        while True:
            try:
                stream = self._client.api.events(filters={"type": "image"}, decode=True)
            except (DockerException, RequestException):
                stream = None
            if stream is not None:
                with self._lock:
                    if self._closed:
                        stream.close()
                        return
                    # Subscribed once the engine answered: from here on no change goes unheard.
                    self._stream, self._live = stream, True
                    self._forget()
                try:
                    for event in stream:
                        with self._lock:
                            self._heard(event)
                except (DockerException, RequestException, ValueError):
                    pass
                with self._lock:
                    self._stream, self._live = None, False
                    self._forget()
            with self._lock:
                if self._closed:
                    return
            time.sleep(EVENTS_RETRY_SECONDS)
