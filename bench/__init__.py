"""`make bench` and what only it installs: its settings, URL map and the bare view. Never in the image."""
