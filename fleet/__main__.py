from fleet.cli import main_exit

main_exit()
