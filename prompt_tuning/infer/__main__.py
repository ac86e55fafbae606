"""`python -m prompt_tuning.infer`: runs as a package's __main__ so gin sees one `infer` configurable
(a module run as __main__ would be registered twice once a gin file imports it)."""
from prompt_tuning.infer import main

if __name__ == "__main__":
    main()
