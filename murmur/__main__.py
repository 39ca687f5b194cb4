from murmur.cli import main

main()
