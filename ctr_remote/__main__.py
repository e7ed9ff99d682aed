from ctr_remote.cli import main

main()
