from lkice.cli import main

main()
