from incrml.cli import main

main()
