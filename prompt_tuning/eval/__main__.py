"""`python -m prompt_tuning.eval`: runs as a package's __main__ so gin sees one `evaluate` configurable
(a module run as __main__ would be registered twice once a gin file imports it)."""
from prompt_tuning.eval import main

if __name__ == "__main__":
    main()
