"""Create an account by email and/or mobile (for support staff and seeding)."""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from otp.addresses import email_normalize, mobile_normalize
from users.models import User
from users.services import user_create


class Command(BaseCommand):
    help = "Create a user with an email address, a mobile number, or both (normalised as the API does)."

    def add_arguments(self, parser):
        parser.add_argument("--email")
        parser.add_argument("--mobile")
        parser.add_argument("--staff", action="store_true", help="May use the admin (set a password with changepassword).")

    def handle(self, *args, email=None, mobile=None, staff=False, **options):
        if not (email or mobile):
            raise CommandError("Give --email, --mobile or both.")
        try:
            fields = {}
            if email:
                fields["email"] = email_normalize(email).value
            if mobile:
                fields["mobile"] = mobile_normalize(mobile).value
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        for field, value in fields.items():
            if User.objects.filter(**{field: value}).exists():
                raise CommandError(f"An account with {field} {value} already exists.")
        user = user_create(**fields, is_staff=staff)
        self.stdout.write(f"Created user {user.pk}: {user}")
