from incrml.launch import main

main()
