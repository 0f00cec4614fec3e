"""The worker service: reliable claims from Redis, solves through a CaptchaAI-compatible API."""
