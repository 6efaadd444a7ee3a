"""What every configuration section shares: the error naming each problem, the base section, names and bounds."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# A topic prefix may have levels, but no wildcards, no empty levels, no leading '$' (broker-reserved topics).
TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"


class ConfigError(Exception):
    """A configuration that cannot run; `problems` holds one line per problem: key path, value, reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


MAX_CHANNEL = 63  # highest channel index (from 0): inputs have at most 64 channels
MAX_EVENT_SECONDS = 86_400.0  # a day: the longest minimum duration or cooldown of an event
MAX_INTERVAL_SECONDS = 3_600.0  # an hour: the longest back-off or publishing interval
MIN_RESTART_SECONDS = 0.1  # the shortest back-off: a command that dies at once restarts at most 10 times a second
MIN_LEVEL_INTERVAL_SECONDS = 1.0  # levels are measured once a second (`clapd.daemon.runner.LEVEL_SECONDS`)
MIN_DBFS = -120.0  # the quietest level a setting may name: digital silence (`clapd.daemon.streams.SILENCE_DBFS`)
EXAMPLE_MARGIN = 0.3  # cosine taken off audio examples' matches: see DetectionConfig.example_margin
NEGATIVE_EXAMPLE_MARGIN = 0.3  # and off negative examples': see DetectionConfig.negative_example_margin
MAX_EXAMPLES = 100  # example files or folders a detection may list (each folder holds at most as many files)


class Section(BaseModel):
    """A block of the configuration file: unknown keys are errors, values are frozen once loaded.

    Every number must be finite: `allow_inf_nan=False` refuses infinity and NaN (YAML's `.inf` and `.nan`, JSON's
    `Infinity`, `NaN` and `1e999`) in every float field of every section, and of every model built on a section's
    fields (the control channel's detection changes); bounds on each field keep finite values sane.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
