"""The Celery worker that runs jobs through the engine."""
