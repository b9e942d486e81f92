"""The names of the Celery queues: one per delivery channel, and one for beat's housekeeping.

Plain constants with no Django import, so settings, workers' start scripts' callers and metrics read the same names.
"""

EMAIL = "email"
SMS = "sms"
MAINTENANCE = "maintenance"
ALL = (EMAIL, SMS, MAINTENANCE)


def queue_for_channel(channel: str) -> str:
    """The queue a delivery job for `channel` ("email" or "sms") goes to; raises KeyError for another channel."""
    return {"email": EMAIL, "sms": SMS}[channel]
