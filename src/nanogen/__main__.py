from nanogen.cli import main

main()
