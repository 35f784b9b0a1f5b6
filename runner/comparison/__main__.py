from runner.comparison.cli import main

main()
