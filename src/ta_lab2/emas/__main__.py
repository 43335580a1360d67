from ta_lab2.emas.cli import main

main()
