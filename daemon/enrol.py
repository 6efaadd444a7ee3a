"""Enrolment from the live stream: audio examples cut from a running daemon's ring buffers (issue 11, item 2).

Three control actions (`clapd.daemon.control`), each one request on `{prefix}/control/set`:

- `enrol`: the newest `last_seconds` (at most `MAX_ENROL_SECONDS`) of a stream become an example of a detection, or
  with `negative` a negative example;
- `false_alarm`: the audio of the detection's last event (on the given stream, else the last on any stream) becomes
  a negative example: what the windows that fired heard, from one window before its start to one window after its
  end (or to now, while it goes on), at most `MAX_ENROL_SECONDS`. (The event's own span is not enough: on the demo
  model a 2 s window around a beeping's false start left every later start in place, the windows around it none.)
- `forget_example`: an enrolled example leaves the detection and its file is deleted.

With an `event_id` (the web page's per-event buttons), `enrol` takes that event's audio as `false_alarm` does. The
detection's last event on its stream is cut from the ring, as above; any other event (an older one, one of an earlier
run, or the last one once the ring has moved past it) is read from its clip file (`clapd.daemon.clip_files`, found
by the event id in its name), resampled to the model's rate if it is not at it, at most `MAX_ENROL_SECONDS` from its
start.
Without either, the request is refused naming the event.

The audio is cut where reading the ring is safe: by the inference thread, each ring's one reader, between two model
calls (`Runner.clip` hands it a `ClipRequest` and waits, bounded). The Runner remembers each (stream, detection)'s
last event (`EventSpan`) for `false_alarm`. The clip is saved as FLAC in `state_dir/examples/<detection>/`, private
like every state file, named `<stream>-<UTC of its first sample>-<positive|negative>.flac`, and checked as any example
file is (`clapd.daemon.examples.read_example`: silent or too short audio is refused with the reason, the file removed).
It then joins the detection by an ordinary update, validated as the config file is, so it goes live between two
model calls and is kept in `control.json` like every control change: it survives restarts until forgotten.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.clip_files import ClipFile, find_clip
from clapd.daemon.config import DetectionConfig
from clapd.daemon.control import MAX_ENROL_SECONDS, ControlError, ControlRequest, apply_request
from clapd.daemon.examples import ExampleError, read_example
from clapd.daemon.resample import Conditioner
from clapd.daemon.ring import Overrun
from clapd.daemon.state_files import private_folder, write_atomically
from clapd.daemon.streams import Stream

logger = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"  # in the state directory: one folder per detection
LONGEST_WINDOW_SECONDS = 10.0  # `windows.window_seconds` at most: a false alarm's audio reaches a window around it
SLOW_CALL_SECONDS = 10.0  # slack for the audio written while the request waits for a slow model call
# The ring must hold the longest enrolment, plus the window before a false alarm's event, plus what arrives meanwhile.
ENROL_RING_SECONDS = math.ceil(MAX_ENROL_SECONDS + LONGEST_WINDOW_SECONDS + SLOW_CALL_SECONDS)  # 50 s
CLIP_WAIT_SECONDS = 5.0  # longest wait for the inference thread to cut the audio (it serves between model calls)
FLAC_SUBTYPE = "PCM_24"  # FLAC holds integers: 24 bits keep ~144 dB below full scale


@dataclass(frozen=True, slots=True)
class RecentAudio:
    """The newest `seconds` of a stream's audio."""

    stream: str
    seconds: float


@dataclass(frozen=True, slots=True)
class EventAudio:
    """The audio of a detection's last event (on `stream`, or the last on any stream), from `context` samples before
    its start to `context` after its end, at most `max_seconds` of it."""

    detection: str
    stream: str | None
    max_seconds: float
    context: int  # samples: the configured window, so the clip holds what every window that fired heard
    event_id: str | None = None  # this event, if it is the last one (the web page's per-event buttons)


ClipRequest = RecentAudio | EventAudio


@dataclass(frozen=True, slots=True)
class EventSpan:
    """Where a detection's last event on a stream lies: sample offsets in the stream."""

    event_id: str
    stream: str
    detection: str
    start_sample: int
    end_sample: int | None  # None while the event goes on
    order: int  # grows with every event started on any stream: the latest has the largest


@dataclass(frozen=True, slots=True)
class Clip:
    """A copy of a stretch of one stream's audio."""

    stream: str
    start_sample: int | None  # its first sample in the stream; None when read from a clip file of any run
    samples: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int  # Hz: the model's
    start_utc: datetime  # of its first sample, from the stream's clock


class NotInRing(ControlError):
    """The ring holds no audio of the event asked for: `why` says why; the event's clip file may hold it."""

    def __init__(self, problem: str, why: str) -> None:
        super().__init__([problem])
        self.why = why


def cut_clip(
    request: ClipRequest, streams: Mapping[str, Stream], last_events: Mapping[tuple[str, str], EventSpan]
) -> Clip:
    """The requested audio, copied from its stream's ring; run by the ring's reader (the inference thread). Raises
    `ControlError` with the reason when there is no such audio."""
    if isinstance(request, RecentAudio):
        stream = _stream(streams, request.stream)
        rate = stream.clock.sample_rate
        n = round(request.seconds * rate)
        written = stream.ring.total_written
        if written < n:
            raise ControlError(
                [f"last_seconds = {request.seconds:g}: stream {request.stream!r} has {written / rate:.1f} s of audio"]
            )
        return _copy(stream, written - n, written, f"stream {request.stream!r}'s last {request.seconds:g} s")
    span = _last_event(request, last_events)
    stream = _stream(streams, span.stream)
    written = stream.ring.total_written
    start = max(0, span.start_sample - request.context)
    end = written if span.end_sample is None else span.end_sample + request.context
    end = min(end, written, start + round(request.max_seconds * stream.clock.sample_rate))
    return _copy(stream, start, end, f"the audio of {request.detection!r}'s last event on {span.stream!r}")


def _stream(streams: Mapping[str, Stream], name: str) -> Stream:
    if name not in streams:
        raise ControlError([f"stream = {name!r}: no such stream (there are: {', '.join(sorted(streams))})"])
    return streams[name]


def _last_event(request: EventAudio, last_events: Mapping[tuple[str, str], EventSpan]) -> EventSpan:
    spans = [
        span
        for (stream, detection), span in last_events.items()
        if detection == request.detection and request.stream in (None, stream)
    ]
    if not spans:
        where = "any stream" if request.stream is None else f"stream {request.stream!r}"
        problem = f"detection = {request.detection!r}: no event on {where} since the daemon started"
        raise NotInRing(problem, f"{request.detection!r} has had no event on {where} since the daemon started")
    last = max(spans, key=lambda span: span.order)
    if request.event_id is not None and last.event_id != request.event_id:
        why = f"it is not the last event ({request.detection!r}'s last on {last.stream!r} is {last.event_id!r})"
        raise NotInRing(f"event_id = {request.event_id!r}: {why}", why)
    return last


def _copy(stream: Stream, start: int, end: int, what: str) -> Clip:
    ring = stream.ring
    kept = f"the ring keeps only the last {ring.capacity / stream.clock.sample_rate:g} s"
    gone = f"{what} is no longer in the ring ({kept})"
    if start < ring.oldest_available:  # asked first: a read of overwritten audio would count as an overrun
        raise NotInRing(gone, f"its audio is no longer in the ring ({kept})")
    try:
        samples = ring.read(start, end - start)
    except Overrun:
        raise NotInRing(gone, f"its audio is no longer in the ring ({kept})") from None
    return Clip(stream.name, start, samples, stream.clock.sample_rate, stream.clock.datetime_at(start))


class ClipSource(Protocol):
    """Who cuts audio out of the running streams (`clapd.daemon.runner.Runner`)."""

    def clip(self, request: ClipRequest, timeout: float) -> Clip: ...


@dataclass(frozen=True, slots=True)
class ExampleChange:
    """The detections after an example action, and the files it adds or removes."""

    detections: dict[str, DetectionConfig]
    added: Path | None = None  # the new example's file: removed if the change is not applied after all
    forgotten: Path | None = None  # the forgotten example's file: deleted once the change is applied and saved

    @property
    def example(self) -> str | None:
        """The file name a result reports: the example added, or the one forgotten."""
        path = self.added or self.forgotten
        return path.name if path is not None else None

    def undo(self) -> None:
        """The change was not applied: its new file goes."""
        if self.added is not None:
            self.added.unlink(missing_ok=True)

    def finish(self) -> None:
        """The change is applied and saved: a forgotten example's file goes."""
        if self.forgotten is None:
            return
        try:
            self.forgotten.unlink(missing_ok=True)
        except OSError as e:
            logger.warning("forget_example: %s left the detection but could not be deleted: %s", self.forgotten, e)


class Enroller:
    """Example actions -> new detections (not yet applied): cuts the audio, saves and checks the example file.

    `window`: the configured window in samples at the model's rate (a false alarm's audio reaches this far around its
    event); `clips`: the clips folder, where an older event's audio is looked for; `sample_rate`: the model's (Hz)."""

    def __init__(self, audio: ClipSource, state_dir: Path, window: int, clips: Path, sample_rate: int) -> None:
        self._audio = audio
        self._folder = (state_dir / EXAMPLES_DIR).absolute()
        self._window = window
        self._clips = clips
        self._rate = sample_rate

    def change(
        self,
        detections: Mapping[str, DetectionConfig],
        request: ControlRequest,
        stream_names: Collection[str],
        max_detections: int | None = None,
    ) -> ExampleChange:
        """Raises `ControlError` with every reason when the request cannot be applied; nothing is left on disk then."""
        name = request.detection
        current = detections.get(name) if name is not None else None
        if name is None or current is None:
            known = ", ".join(sorted(detections))
            raise ControlError([f"detection = {name!r}: no such detection (there are: {known})"])
        if current.level is not None:
            raise ControlError([f"detection = {name!r}: a level detection takes no audio examples"])
        if request.action == "forget_example":
            return self._forget(detections, name, request, stream_names, max_detections)
        negative = request.action == "false_alarm" or request.negative
        path = self._save(name, self._audio_of(name, request), negative)
        key = "negative_examples" if negative else "examples"
        try:
            fields = {key: [*getattr(current, key), str(path)]}
            changed = _updated(detections, name, fields, stream_names, max_detections)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return ExampleChange(changed, added=path)

    def _audio_of(self, detection: str, request: ControlRequest) -> Clip:
        """The ring's audio; for a named event the ring does not hold (not the last, or overwritten), its clip's."""
        try:
            return self._audio.clip(self._clip_request(detection, request), CLIP_WAIT_SECONDS)
        except NotInRing as e:
            event_id = request.event_id
            if event_id is None:
                raise
            kept = find_clip(self._clips, event_id)
            if kept is None:
                raise ControlError([f"event_id = {event_id!r}: no clip kept for event {event_id} and {e.why}"]) from e
            return self._clip_file(kept, detection, request.stream)

    def _clip_request(self, detection: str, request: ControlRequest) -> ClipRequest:
        if request.action == "enrol" and request.event_id is None:
            assert request.stream is not None and request.last_seconds is not None, "parse_request checks them"
            return RecentAudio(request.stream, request.last_seconds)
        return EventAudio(detection, request.stream, MAX_ENROL_SECONDS, self._window, request.event_id)

    def _clip_file(self, kept: ClipFile, detection: str, stream: str | None) -> Clip:
        """The first `MAX_ENROL_SECONDS` of an event's clip file, at the model's rate.

        The whole clip, pre-roll and post-roll included, is right: like the ring's window of context on either side,
        the pre-roll holds the windows that straddled the onset, which are what fired; and the room around the sound
        costs nothing, since an example is embedded from its windows within `ACTIVE_WINDOW_DB` of its loudest only
        (`clapd.daemon.examples`). A clip's name gives its start but not where its event starts in it, and the
        pre-roll it was written with may since have changed, so the event's own span cannot be cut out reliably.
        A clip longer than the cap keeps its start: the onset, and what came just before it."""
        event_id = kept.event_id
        if kept.detection != detection or stream not in (None, kept.stream):
            raise ControlError(
                [f"event_id = {event_id!r}: its clip is of {kept.detection!r} on {kept.stream!r}, not of {detection!r}"]
            )
        import soundfile

        try:
            rate = soundfile.info(str(kept.path)).samplerate
            frames = soundfile.read(
                str(kept.path), frames=math.ceil(MAX_ENROL_SECONDS * rate), dtype="float32", always_2d=True
            )[0]
        except (OSError, RuntimeError, soundfile.LibsndfileError) as e:  # deleted meanwhile, or damaged
            raise ControlError([f"event_id = {event_id!r}: cannot read its clip {kept.path}: {e}"]) from e
        conditioner = Conditioner(rate, frames.shape[1], out_rate=self._rate)
        samples = np.concatenate([conditioner.process(frames), conditioner.flush()])
        logger.info("event %s: audio from its clip %s", event_id, kept.path)
        return Clip(kept.stream, None, samples[: round(MAX_ENROL_SECONDS * self._rate)], self._rate, kept.start_utc)

    def _save(self, detection: str, clip: Clip, negative: bool) -> Path:
        """The clip as a FLAC file in the detection's folder, checked as an example file; `ControlError` if unusable."""
        import soundfile

        stamp = clip.start_utc.strftime("%Y%m%dT%H%M%S") + f"{clip.start_utc.microsecond // 1000:03d}Z"
        folder = self._folder / detection
        kind = "negative" if negative else "positive"
        path = folder / f"{clip.stream}-{stamp}-{kind}.flac"
        for n in range(2, 100):  # two clips of the same millisecond
            if not path.exists():
                break
            path = folder / f"{clip.stream}-{stamp}-{kind}-{n}.flac"
        data = io.BytesIO()
        soundfile.write(data, np.clip(clip.samples, -1.0, 1.0), clip.sample_rate, format="FLAC", subtype=FLAC_SUBTYPE)
        try:
            private_folder(self._folder)
            write_atomically(path, data.getvalue())
        except OSError as e:
            raise ControlError([f"cannot write the example {path}: {e.strerror or e}"]) from e
        try:
            read_example(path)
        except ExampleError as e:
            path.unlink(missing_ok=True)
            raise ControlError([f"stream = {clip.stream!r}: the audio is not a usable example: {e}"]) from e
        logger.info("enrolled %s: %.1f s of %s", path, clip.samples.size / clip.sample_rate, clip.stream)
        return path

    def _forget(
        self,
        detections: Mapping[str, DetectionConfig],
        name: str,
        request: ControlRequest,
        stream_names: Collection[str],
        max_detections: int | None,
    ) -> ExampleChange:
        """Only an enrolled example (a file of the detection's folder) is forgotten: the config file's are edited
        there."""
        assert request.file is not None, "parse_request checks it"
        current = detections[name]
        folder = self._folder / name
        enrolled = [
            entry
            for entry in (*current.examples, *current.negative_examples)
            if Path(entry).absolute().parent == folder
        ]
        chosen = [entry for entry in enrolled if request.file in (entry, Path(entry).name)]
        if not chosen:
            listed = ", ".join(Path(entry).name for entry in enrolled) or "none"
            raise ControlError([f"file = {request.file!r}: not an enrolled example of {name!r} (enrolled: {listed})"])
        fields = {
            key: [entry for entry in getattr(current, key) if entry not in chosen]
            for key in ("examples", "negative_examples")
        }
        changed = _updated(detections, name, fields, stream_names, max_detections)
        return ExampleChange(changed, forgotten=Path(chosen[0]))


def _updated(
    detections: Mapping[str, DetectionConfig],
    name: str,
    fields: dict[str, list[str]],
    stream_names: Collection[str],
    max_detections: int | None = None,
) -> dict[str, DetectionConfig]:
    """The detections with `fields` of detection `name` changed, validated as an `update` request is."""
    update = ControlRequest(action="update", detection=name, config=fields)
    try:
        return apply_request(detections, update, stream_names, max_detections)
    except ControlError as e:
        raise ControlError([f"detection {name!r} with that change: {p}" for p in e.problems]) from e
