"""Scores over time -> events: hysteresis, smoothing, minimum duration, cooldown and timing from samples."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from clapd.daemon.config import DetectionConfig
from clapd.daemon.events import DetectionTracker, EventTracker, StreamClock
from clapd.daemon.matcher import DetectionPrompts, Matcher
from clapd.daemon.records import Scores

RATE = 48_000
HOP = RATE // 2  # 0.5 s
WINDOW = 2 * RATE  # 2 s
CLOCK = StreamClock(datetime(2026, 1, 1, tzinfo=timezone.utc), RATE)


def run(config: DetectionConfig, scores: list[float]) -> list:
    tracker = DetectionTracker("kitchen", "alarm", config, CLOCK, HOP)
    events = []
    for i, score in enumerate(scores):
        events += tracker.feed(score, i * HOP, i * HOP + WINDOW)
    return events + tracker.close(len(scores) * HOP + WINDOW)


def test_one_sound_gives_one_start_and_one_end_with_the_same_id() -> None:
    config = DetectionConfig(prompts=["x"], threshold_on=0.6, threshold_off=0.4, smoothing_windows=1)
    events = run(config, [0.1] * 6 + [0.9] * 5 + [0.1] * 6)
    assert [e.kind for e in events] == ["start", "end"]
    start, end = events
    assert start.event_id == end.event_id and start.detection == "alarm" and start.stream == "kitchen"
    # The first hearing window starts at hop 6 and ends at 6 * HOP + WINDOW: onset half a hop before its end.
    assert start.start_sample == 6 * HOP + WINDOW - HOP // 2
    assert end.end_sample == 10 * HOP + HOP // 2  # half a hop after the start of the last hearing window
    assert start.start_utc == "2026-01-01T00:00:04.750+00:00"
    assert end.peak_score == pytest.approx(0.9) and end.mean_score == pytest.approx(0.9)


def test_hysteresis_keeps_an_event_open_between_the_thresholds() -> None:
    config = DetectionConfig(prompts=["x"], threshold_on=0.6, threshold_off=0.3, smoothing_windows=1)
    events = run(config, [0.1, 0.7, 0.5, 0.4, 0.45, 0.7, 0.2, 0.1])
    assert [e.kind for e in events] == ["start", "end"]
    assert events[1].peak_score == pytest.approx(0.7)


def test_smoothing_ignores_a_single_spike() -> None:
    spike = [0.1] * 5 + [0.95] + [0.1] * 5
    assert run(DetectionConfig(prompts=["x"], smoothing_windows=3), spike) == []
    assert [e.kind for e in run(DetectionConfig(prompts=["x"], smoothing_windows=1), spike)] == ["start", "end"]


def test_minimum_duration_drops_short_events_and_delays_the_start() -> None:
    config = DetectionConfig(prompts=["x"], smoothing_windows=1, min_duration_seconds=2.0)
    assert run(config, [0.1] * 3 + [0.9] * 2 + [0.1] * 3) == []
    events = run(config, [0.1] * 3 + [0.9] * 8 + [0.1] * 3)
    assert [e.kind for e in events] == ["start", "end"]
    assert events[0].start_sample == 3 * HOP + WINDOW - HOP // 2  # the onset, not when it was announced


def test_cooldown_suppresses_a_restart_right_after_an_end() -> None:
    pattern = [0.1] * 2 + [0.9] * 2 + [0.1] * 2 + [0.9] * 2 + [0.1] * 2
    assert len(run(DetectionConfig(prompts=["x"], smoothing_windows=1), pattern)) == 4
    cooled = run(DetectionConfig(prompts=["x"], smoothing_windows=1, cooldown_seconds=3.0), pattern)
    assert [e.kind for e in cooled] == ["start", "end"]


def test_an_event_heard_by_one_window_lasts_one_hop() -> None:
    """The onset estimate (half a hop before the window's end) lies after the end estimate (half a hop after its
    start): the event is given the detector's resolution, one hop, instead of a zero or negative duration."""
    config = DetectionConfig(prompts=["x"], threshold_on=0.6, threshold_off=0.4, smoothing_windows=1)
    start, end = run(config, [0.1] * 4 + [0.9] + [0.1] * 4)
    assert start.start_sample == 4 * HOP + WINDOW - HOP // 2
    assert end.end_sample - start.start_sample == HOP
    assert end.end_utc > start.start_utc


@pytest.mark.parametrize("heard", [1, 2, 3, 4, 5, 6, 8])
def test_events_always_end_after_they_start(heard: int) -> None:
    config = DetectionConfig(prompts=["x"], threshold_on=0.6, threshold_off=0.4, smoothing_windows=1)
    start, end = run(config, [0.1] * 3 + [0.9] * heard + [0.1] * 6)
    expected = max(HOP, (3 + heard - 1) * HOP + HOP // 2 - start.start_sample)  # later than a hop: the estimate
    assert end.end_sample - start.start_sample == expected


def test_close_ends_an_event_in_progress() -> None:
    events = run(DetectionConfig(prompts=["x"], smoothing_windows=1), [0.1, 0.9, 0.9])
    assert [e.kind for e in events] == ["start", "end"] and events[1].end_sample == 3 * HOP + WINDOW


def test_event_tracker_routes_by_stream_and_detection_filters() -> None:
    detections = {
        "alarm": DetectionConfig(prompts=["x"], smoothing_windows=1),
        "garage_only": DetectionConfig(prompts=["y"], smoothing_windows=1, streams=["garage"]),
    }
    tracker = EventTracker(detections, {"kitchen": CLOCK, "garage": CLOCK}, HOP)
    events = tracker.feed(Scores("kitchen", 0, WINDOW, {"alarm": 0.9}))
    events += tracker.feed(Scores("garage", 0, WINDOW, {"alarm": 0.1, "garage_only": 0.9}))
    assert sorted((e.stream, e.detection) for e in events) == [("garage", "garage_only"), ("kitchen", "alarm")]


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_matcher_needs_a_margin_over_background_and_negatives() -> None:
    alarm = DetectionPrompts("alarm", unit([1, 0, 0]), np.zeros((0, 3)), None)
    with_negative = DetectionPrompts("alarm_not_beep", unit([1, 0, 0]), unit([0.9, 0.1, 0])[None], None)
    garage = DetectionPrompts("garage", unit([0, 1, 0]), np.zeros((0, 3)), frozenset({"garage"}))
    matcher = Matcher([alarm, with_negative, garage], background=unit([0, 0, 1])[None], logit_scale=30.0)
    alarm_like = matcher.score("kitchen", unit([1, 0, 0.1]))
    ordinary = matcher.score("kitchen", unit([0.1, 0, 1]))
    assert set(alarm_like) == {"alarm", "alarm_not_beep"}  # garage watches another stream
    assert alarm_like["alarm"] > 0.99 and ordinary["alarm"] < 0.01
    assert alarm_like["alarm_not_beep"] < 0.6  # its negative prompt describes the sound about as well


def test_clock_reanchors_after_an_outage() -> None:
    clock = StreamClock(datetime(2026, 1, 1, tzinfo=timezone.utc), RATE)
    assert clock.utc(RATE) == "2026-01-01T00:00:01.000+00:00"
    clock.reanchor(2 * RATE, datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc))  # away for a minute, no samples
    assert clock.utc(3 * RATE) == "2026-01-01T00:01:01.000+00:00"


def test_renaming_a_detection_keeps_its_event_going() -> None:
    config = DetectionConfig(prompts=["x"], smoothing_windows=1)
    tracker = EventTracker({"alarm": config}, {"kitchen": CLOCK}, HOP)
    assert [e.kind for e in tracker.feed(Scores("kitchen", 0, WINDOW, {"alarm": 0.9}))] == ["start"]
    renamed = config.model_copy(update={"name": "Kitchen alarm"})
    assert tracker.update({"alarm": renamed}, {"kitchen": WINDOW}) == []
    retuned = renamed.model_copy(update={"threshold_on": 0.8})
    assert [e.kind for e in tracker.update({"alarm": retuned}, {"kitchen": WINDOW})] == ["end"]
