"""captcha-fleet: an auto-scaling fleet of CAPTCHA-solving workers."""

__version__ = "0.1.0"
