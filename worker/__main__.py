from skyloom.worker.main import main

main()
