from qwenhost.cli.main import main

main()
