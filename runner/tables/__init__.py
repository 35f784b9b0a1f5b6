"""Reproducing papers' tables: a recipe (`recipes/<table>.yaml`) expands into runs (`recipe`), the runs go
through `divrun` one folder each (`launch`), and their summaries become a table beside the paper's numbers
(`results`, `render`). `python -m runner.tables` / `divrun-table` / `make reproduce-table` drive it (`cli`)."""
