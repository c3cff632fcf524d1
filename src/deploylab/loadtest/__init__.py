"""Business-scenario load testing of any OpenAI-compatible endpoint (`deploylab loadtest`):
scenarios, arrival schedules, HTTP clients, measurement, reports. Talks HTTP only; never
imports the engine or the server."""
