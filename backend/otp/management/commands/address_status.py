"""Print what the service knows of an address: account, recent codes, deliveries and throttles."""
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.clock import clock_now
from otp.addresses import email_normalize, mobile_normalize
from otp.selectors import address_state_get
from otp.throttles import ADDRESS_LIMITS


class Command(BaseCommand):
    help = "Show an address's account, pending and recent codes (never the code itself), deliveries and throttles."

    def add_arguments(self, parser):
        parser.add_argument("address", help="An email address or a mobile number.")

    def handle(self, *args, address: str, **options):
        try:
            normalized = email_normalize(address) if "@" in address else mobile_normalize(address)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        state = address_state_get(address=normalized)
        now = clock_now()
        out = self.stdout.write
        out(f"Address: {normalized.value} ({normalized.channel.value})")
        out(f"Account: {f'user {state.user.pk}, joined {state.user.date_joined:%Y-%m-%d %H:%M}' if state.user else 'none'}")
        if settings.REDIS_URL:
            out("Throttles: " + ", ".join(limit.describe(state.throttles[limit.name]) for limit in ADDRESS_LIMITS))
        else:
            # Without Redis (the quick run) the throttles live in the server process's memory: this process would
            # show zeros while the server answers 429 (found by a new-user pass).
            out("Throttles: not visible here: without REDIS_URL (the quick run) they live in the server's own memory")
        out("Codes (newest first):")
        for code in state.codes:
            # A countdown only for a code that can still be used: "92s left" beside a used or superseded code read
            # as if it still worked (found by a new-user pass).
            if code.status != code.Status.ACTIVE:
                life = ""
            elif code.expires_at <= now:
                life = "expired"
            else:
                life = f"{int((code.expires_at - now).total_seconds())}s left"
            out(f"  {code.created_at:%Y-%m-%d %H:%M:%S}  {code.purpose:<8} {code.status:<10} "
                f"attempts {code.attempts}  {life}")
        if not state.codes:
            out("  none")
        out("Deliveries (newest first):")
        for delivery in state.deliveries:
            out(f"  {delivery.created_at:%Y-%m-%d %H:%M:%S}  {delivery.channel:<5} {delivery.status:<7} "
                f"attempts {delivery.attempts}  provider {delivery.provider or '-'} {delivery.provider_id or '-'} "
                f"{delivery.provider_status or ''}  {delivery.last_error}")
        if not state.deliveries:
            out("  none")
