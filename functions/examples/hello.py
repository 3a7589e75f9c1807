def main(name):
    api.send("hello " + name + "\n")
