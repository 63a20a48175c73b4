from llmslim.cli import main

main()
