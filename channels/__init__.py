"""Channel adapters: each turns a provider's or a browser's wire format into gateway events."""
