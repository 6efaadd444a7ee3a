"""Everyday sound descriptions: what `clapd listen` ranks each window against, to show what the model hears.

They go into the daemon's own pipeline as hidden detections (`with_everyday`), one text prompt each. A detection's
score is a softmax of its own logit against its negatives and the background prompts only, never against the other
detections, so adding these changes no configured detection's score; and among them (no negatives, the same
background) the order of the scores is the order of the window's cosine with each description.

The first block names the demo model's own classes (`clapd.models.synthetic`), in words close to its training
captions, so the embedded demo shows a sensible top match; the rest are the sounds of a home, a street and a
workshop that people most often ask a detector about. A large model knows them; the small demo model was never
trained on them, and its guesses among them mean little.
"""

from __future__ import annotations

from clapd.daemon.config import ClapdConfig, ConfigError, DetectionConfig

HIDDEN_PREFIX = "everyday--"  # a hidden detection's name is this and its key; a configured one of that name is refused

# The demo model's classes (`clapd.models.synthetic.CLASSES` keys -> the key of their description below).
DEMO_CLASS_SOUNDS = {
    "siren": "siren",
    "smoke_alarm": "smoke_alarm",
    "phone_ringing": "phone_ringing",
    "knocking": "knocking",
    "clock_ticking": "clock_ticking",
    "running_water": "running_water",
    "engine_hum": "engine_idling",
    "glass_breaking": "glass_breaking",
    "dog_barking": "dog_barking",
    "speech": "people_talking",
}

EVERYDAY_SOUNDS: dict[str, str] = {
    # the demo model's classes
    "siren": "a siren wailing",
    "smoke_alarm": "a smoke alarm beeping",
    "phone_ringing": "a telephone ringing",
    "knocking": "knocking on a door",
    "clock_ticking": "a clock ticking",
    "running_water": "water running from a tap",
    "engine_idling": "an engine idling",
    "glass_breaking": "glass breaking",
    "dog_barking": "a dog barking",
    "people_talking": "people talking",
    # at home
    "door_closing": "a door closing",
    "door_slamming": "a door slamming",
    "doorbell": "a doorbell ringing",
    "footsteps": "footsteps",
    "baby_crying": "a baby crying",
    "child_laughing": "a child laughing",
    "cat_meowing": "a cat meowing",
    "vacuum_cleaner": "a vacuum cleaner",
    "microwave_beeping": "a microwave beeping",
    "kettle_whistling": "a kettle whistling",
    "water_boiling": "water boiling",
    "washing_machine": "a washing machine running",
    "dishwasher": "a dishwasher running",
    "hair_dryer": "a hair dryer",
    "blender": "a blender",
    "toilet_flushing": "a toilet flushing",
    "dishes_clattering": "dishes clattering",
    "frying": "food sizzling in a pan",
    "keys_jingling": "keys jingling",
    "typing": "typing on a keyboard",
    "music": "music playing",
    "television": "a television in the background",
    "alarm_clock": "an alarm clock ringing",
    "phone_vibrating": "a phone vibrating",
    "notification_chime": "a notification chime",
    "coughing": "someone coughing",
    "sneezing": "someone sneezing",
    "snoring": "someone snoring",
    "laughter": "people laughing",
    "clapping": "hands clapping",
    "whistling": "a person whistling",
    "paper_rustling": "paper rustling",
    "fan": "a fan whirring",
    "refrigerator": "a refrigerator humming",
    "fire_crackling": "a fire crackling",
    # outside
    "birds": "birds singing",
    "rain": "rain falling",
    "thunder": "thunder",
    "wind": "wind blowing",
    "car_horn": "a car horn",
    "car_passing": "a car driving past",
    "motorcycle": "a motorcycle",
    "truck_reversing": "a truck reversing beeper",
    "airplane": "an airplane flying overhead",
    "train": "a train passing",
    "lawn_mower": "a lawn mower",
    # tools
    "drill": "a power drill",
    "hammering": "hammering",
    "chainsaw": "a chainsaw",
}


def hidden_name(key: str) -> str:
    """The hidden detection's name for an everyday sound's key."""
    return HIDDEN_PREFIX + key


def with_everyday(config: ClapdConfig) -> ClapdConfig:
    """The config with one hidden detection per everyday sound (its description the only prompt, watching every
    stream), named `hidden_name(key)`; its thresholds never matter, nothing publishes its events. `ConfigError` if a
    configured detection has such a name."""
    hidden = {hidden_name(key): DetectionConfig(prompts=[text]) for key, text in EVERYDAY_SOUNDS.items()}
    clashes = sorted(set(hidden) & set(config.detections))
    if clashes:
        problems = [
            f"detections.{name}: the name is reserved for an everyday sound of `clapd listen`" for name in clashes
        ]
        raise ConfigError("clapd listen", problems)
    return config.model_copy(update={"detections": {**config.detections, **hidden}})


def everyday_description(name: str) -> str | None:
    """The description behind a hidden detection's name; None for a configured detection."""
    if not name.startswith(HIDDEN_PREFIX):
        return None
    return EVERYDAY_SOUNDS.get(name[len(HIDDEN_PREFIX) :])
