"""The tables `make reproduce-table` knows, one YAML recipe each (shipped as the package `runner.recipes`)."""
