"""List the accounts stored under an address the current address rules refuse or spell otherwise (read-only)."""
import dataclasses
import json

from django.core.management.base import BaseCommand

from otp.selectors import account_address_findings, account_count


class Command(BaseCommand):
    help = ("List accounts whose stored email or mobile today's address rules (the API's) refuse, or store under "
            "another spelling: id, field, stored value, what the rules say. Changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json",
                            help="One JSON object per account and field.")

    def handle(self, *args, as_json: bool = False, **options):
        found = set()
        for finding in account_address_findings():
            found.add(finding.id)
            if as_json:
                self.stdout.write(_json_line(finding))
                continue
            if finding.verdict == "refused":
                verdict = f"refused: {finding.detail}"
            else:
                verdict = f"normalised to {finding.normalised}"
                if finding.clashes_with is not None:
                    verdict += f" (already held by user {finding.clashes_with})"
            self.stdout.write(f"{finding.id}\t{finding.field}\t{finding.stored}\t{verdict}")
        if not as_json:
            total = account_count()
            self.stdout.write(f"{len(found)} of {total} accounts need attention." if found
                              else f"All {total} accounts follow the address rules.")


def _json_line(finding) -> str:
    return json.dumps(dataclasses.asdict(finding), ensure_ascii=False)
