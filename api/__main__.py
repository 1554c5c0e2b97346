from parallelplan.cli.main import main

main()
