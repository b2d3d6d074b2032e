"""Ferry's shared layer: settings, the database schema and the data access both api/ and workers/ use."""
