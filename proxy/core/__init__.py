"""Pure core: parsing, validation, rules and response shaping. No sockets, clocks, files or environment."""
