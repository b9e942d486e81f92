"""A bare DRF view doing one INSERT: the ceiling the service's own endpoints are measured against."""
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from benchapp.models import BareRow


class BareInsertApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        BareRow.objects.create(note=str(request.data.get("email", ""))[:254])
        return Response({"detail": "ok"}, status=202)
