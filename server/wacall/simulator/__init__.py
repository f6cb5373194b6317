"""The embedded WhatsApp simulator (`serve --upstream sim`)."""
