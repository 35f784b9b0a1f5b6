from runner.tables.cli import main

main()
