"""The rows tests start from: accounts, codes issued as the API issues them, and rows written directly."""


def user(**fields):
    """An account, as `create_user` makes it (pass normalised addresses: email=..., mobile=...)."""
    from users.models import User

    return User.objects.create_user(**fields)


def issued_code(address, purpose=None):
    """A code issued through the service, as the API issues it (for registering unless `purpose` says otherwise);
    returns its delivery record, queued."""
    from otp import services
    from otp.models import Purpose

    return services.code_issue(address=address, purpose=purpose or Purpose.REGISTER)


def code_row(address: str, *, expires_at, save: bool = True, **fields):
    """A code row written directly, with a hash no code matches (for housekeeping and the like)."""
    from otp.models import OneTimeCode

    code = OneTimeCode(**{"address": address, "channel": "email", "purpose": "login", "code_hash": "x" * 64,
                          "expires_at": expires_at, **fields})
    if save:
        code.save()
    return code


def delivery_row(address: str, *, expires_at, **fields):
    """A delivery record written directly, queued unless `fields` say otherwise."""
    from otp.models import Delivery

    return Delivery.objects.create(**{"address": address, "channel": "email", "purpose": "login",
                                      "expires_at": expires_at, **fields})
