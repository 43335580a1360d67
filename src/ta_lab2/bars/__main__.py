from ta_lab2.bars.cli import main

main()
