"""The real peer the bench compares the service with: drfpasswordless in a minimal Django project of its own."""
