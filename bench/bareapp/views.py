"""A bare DRF view doing one INSERT: the ceiling the service's own endpoints are measured against."""
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.bareapp.models import BareRow


class BareInsertApi(APIView):
    """POST `{"email": str}`: inserts one BareRow (the address cut to 254 characters) and answers 202
    `{"detail": "ok"}`. No authentication, throttling or validation: the least a DRF view behind the same
    nginx and gunicorn can do with one database write."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        BareRow.objects.create(note=str(request.data.get("email", ""))[:254])
        return Response({"detail": "ok"}, status=202)
