"""Bundled or procedurally generated datasets. No downloads anywhere."""

from diffkit.data.digits import DigitsSplit, load_digits
from diffkit.data.moving_digits import MovingDigits, MovingDigitsConfig, make_moving_digits

__all__ = ["DigitsSplit", "MovingDigits", "MovingDigitsConfig", "load_digits", "make_moving_digits"]
