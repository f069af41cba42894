"""``hbdnet serve``: the job service (FastAPI). ``serving.api.app.create_app`` builds the app."""
