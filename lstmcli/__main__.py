"""python -m lstmcli"""

from lstmcli.cli import main

main()
