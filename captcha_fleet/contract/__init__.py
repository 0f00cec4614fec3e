"""The contract every part of the fleet stands on: keys, records, config, the Redis and CaptchaAI clients.

It imports nothing of the services (``worker``, ``controller``) or the applications above them.
"""
