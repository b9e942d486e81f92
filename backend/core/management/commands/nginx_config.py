"""Render the nginx configuration of the native stack from the settings (validated like every other setting)."""
import re
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

NGINX_DIR = settings.REPO_DIR / "nginx"
TEMPLATE_VARIABLE = re.compile(r"\$\{([A-Z_]+)\}")


def template_render(text: str, values: dict[str, str]) -> str:
    """What envsubst does in nginx's image: replace ${NAME} for the given names, leave nginx's $variables alone."""
    return TEMPLATE_VARIABLE.sub(lambda match: values.get(match[1], match[0]), text)


def real_ip_render(ranges: list[str]) -> str:
    """real-ip.conf for TRUSTED_PROXY_RANGES (networks, as settings.TRUSTED_PROXY_RANGES holds them): nginx takes
    the client's address from X-Forwarded-For when the peer is one of them, walking left past every trusted
    entry (real_ip_recursive), so a client cannot name itself by forging the header; and $otp_from_trusted_proxy
    says whether the peer is one of them (1) or not (0). nginx/trusted-proxies.sh writes the same text in nginx's
    image (compose)."""
    if not ranges:
        return ("# TRUSTED_PROXY_RANGES is empty: clients connect to nginx directly.\n"
                "geo $otp_from_trusted_proxy {\n    default 0;\n}\n")
    lines = [f"set_real_ip_from {network};" for network in ranges]
    lines += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    # Tested on the connection's own address ($realip_remote_addr), not the client's taken from the header.
    lines += ["geo $realip_remote_addr $otp_from_trusted_proxy {", "    default 0;",
              *(f"    {network} 1;" for network in ranges), "}"]
    return "\n".join(lines) + "\n"


class Command(BaseCommand):
    help = "Write nginx.conf, default.conf and real-ip.conf for the native stack under STACK_DIR/nginx."

    def add_arguments(self, parser):
        parser.add_argument("stack_dir", type=Path)

    def handle(self, *args, stack_dir: Path, **options):
        stack_dir = stack_dir.resolve()
        values = {
            "HTTP_PORT": str(settings.HTTP_PORT),
            "API_UPSTREAM": f"127.0.0.1:{settings.API_PORT}",
            "EDGE_SEND_RATE": settings.EDGE_SEND_RATE,
            "EDGE_SEND_BURST": str(settings.EDGE_SEND_BURST),
            "STACK_DIR": str(stack_dir),
            "NGINX_ACCESS_LOG": str(stack_dir / "log" / "nginx-access.log"),
            "ADMIN_PUBLIC": "on" if settings.ADMIN_PUBLIC else "off",
            "PUBLIC_BASE_URL": settings.PUBLIC_BASE_URL,
        }
        out = stack_dir / "nginx"
        out.mkdir(parents=True, exist_ok=True)
        for template, target in (("templates/default.conf.template", "default.conf"),
                                 ("native.conf.template", "nginx.conf")):
            rendered = template_render((NGINX_DIR / template).read_text(), values)
            leftover = TEMPLATE_VARIABLE.findall(rendered)
            if leftover:
                raise SystemExit(f"nginx template {template} has unknown variables: {sorted(set(leftover))}")
            (out / target).write_text(rendered)
        (out / "real-ip.conf").write_text(real_ip_render(settings.TRUSTED_PROXY_RANGES))
        self.stdout.write(str(out / "nginx.conf"))
