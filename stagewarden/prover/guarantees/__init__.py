"""One module per guarantee kind, each a check over the shared solver session."""
