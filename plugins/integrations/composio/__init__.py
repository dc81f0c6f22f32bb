"""composio integration."""
